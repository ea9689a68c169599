"""A PyTorch DARTS supernet and search step, the reference for ``benchmarks/search_step.py``.

The same network as ``rkdsc_jax.nas.search_space.SearchNetwork`` written the way DARTS's
``model_search.py`` / ``architect.py`` (Liu et al., 2019) write it: eager PyTorch, NCHW or
channels-last, one module per op per edge, ``none`` computed as ``x·0``.  The search step
is DARTS's iteration: the α step on a validation batch (first order, or DARTS's second
order with the finite-difference Hessian-vector product), then the clipped SGD weight step
on a training batch.  The unrolled model is evaluated with ``torch.func.functional_call``
instead of DARTS's deep copy (same arithmetic, less copying).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

PRIMITIVES = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
              "dil_conv_3x3", "dil_conv_5x5")


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in, c_out, kernel, stride, padding, affine=True):
        super().__init__(nn.ReLU(), nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False),
                         nn.BatchNorm2d(c_out, affine=affine))


class DilConv(nn.Sequential):
    def __init__(self, c_in, c_out, kernel, stride, padding, dilation, affine=True):
        super().__init__(nn.ReLU(), nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation, groups=c_in, bias=False),
                         nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out, affine=affine))


class SepConv(nn.Sequential):
    def __init__(self, c_in, c_out, kernel, stride, padding, affine=True):
        super().__init__(DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
                         DilConv(c_in, c_out, kernel, 1, padding, 1, affine))


class Zero(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x.mul(0.0) if self.stride == 1 else x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    def __init__(self, c_in, c_out, affine=True):
        super().__init__()
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x):
        x = F.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


def make_op(name, c, stride, affine):
    if name == "none":
        return Zero(stride)
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride, 1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride, 1, count_include_pad=False)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine)
    kernel, dilation, padding = {"sep_conv_3x3": (3, 1, 1), "sep_conv_5x5": (5, 1, 2),
                                 "dil_conv_3x3": (3, 2, 2), "dil_conv_5x5": (5, 2, 4)}[name]
    if name.startswith("sep"):
        return SepConv(c, c, kernel, stride, padding, affine)
    return DilConv(c, c, kernel, stride, padding, dilation, affine)


class MixedOp(nn.Module):
    def __init__(self, c, stride):
        super().__init__()
        ops = []
        for name in PRIMITIVES:
            op = make_op(name, c, stride, False)
            if "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(c, affine=False))
            ops.append(op)
        self._ops = nn.ModuleList(ops)

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self._ops))


class Cell(nn.Module):
    def __init__(self, steps, multiplier, c_pp, c_p, c, reduction, reduction_prev):
        super().__init__()
        self.reduction, self._steps, self._multiplier = reduction, steps, multiplier
        self.preprocess0 = (FactorizedReduce(c_pp, c, False) if reduction_prev
                            else ReLUConvBN(c_pp, c, 1, 1, 0, False))
        self.preprocess1 = ReLUConvBN(c_p, c, 1, 1, 0, False)
        self._ops = nn.ModuleList(MixedOp(c, 2 if reduction and j < 2 else 1)
                                  for i in range(steps) for j in range(2 + i))

    def forward(self, s0, s1, weights):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self._steps):
            s = sum(self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self._multiplier:], dim=1)


class Network(nn.Module):
    """DARTS's search ``Network``; α are ``alphas_normal`` / ``alphas_reduce`` parameters."""

    def __init__(self, c, num_classes, layers, in_channels=3, steps=4, multiplier=4, stem_multiplier=3):
        super().__init__()
        c_curr = stem_multiplier * c
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
        c_pp, c_p, c_curr = c_curr, c_curr, c
        cells, reduction_prev = [], False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c_curr *= 2
            cells.append(Cell(steps, multiplier, c_pp, c_p, c_curr, reduction, reduction_prev))
            reduction_prev = reduction
            c_pp, c_p = c_p, multiplier * c_curr
        self.cells = nn.ModuleList(cells)
        self.classifier = nn.Linear(c_p, num_classes)
        num_edges = sum(2 + i for i in range(steps))
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(num_edges, len(PRIMITIVES)))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(num_edges, len(PRIMITIVES)))

    def arch_parameters(self):
        return [self.alphas_normal, self.alphas_reduce]

    def weight_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("alphas_")]

    def forward(self, x):
        s0 = s1 = self.stem(x)
        normal, reduce = F.softmax(self.alphas_normal, -1), F.softmax(self.alphas_reduce, -1)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, reduce if cell.reduction else normal)
        return self.classifier(s1.mean(dim=(2, 3)))


class Search:
    """DARTS's ``train_search`` iteration: ``step(x_train, y_train, x_val, y_val)``."""

    def __init__(self, model: Network, order: str = "first", lr=0.025, momentum=0.9, weight_decay=3e-4,
                 grad_clip=5.0, a_lr=3e-4, a_weight_decay=1e-3):
        self.model, self.order = model, order
        self.lr, self.momentum, self.weight_decay, self.grad_clip = lr, momentum, weight_decay, grad_clip
        self.w_opt = torch.optim.SGD(model.weight_parameters(), lr, momentum=momentum, weight_decay=weight_decay)
        self.a_opt = torch.optim.Adam(model.arch_parameters(), a_lr, betas=(0.5, 0.999), weight_decay=a_weight_decay)
        self.names = [n for n, _ in model.named_parameters() if not n.startswith("alphas_")]

    def _loss(self, x, y, params=None):
        logits = self.model(x) if params is None else functional_call(self.model, params, (x,))
        return F.cross_entropy(logits, y)

    def _alpha_grad(self, loss, retain_graph=False):
        """∂loss/∂α; zeros for a cell type the network does not have (e.g. one reduction cell)."""
        alphas = self.model.arch_parameters()
        grads = torch.autograd.grad(loss, alphas, retain_graph=retain_graph, allow_unused=True)
        return [torch.zeros_like(a) if g is None else g for a, g in zip(alphas, grads)]

    def _arch_step_second_order(self, x, y, xv, yv):
        """DARTS ``Architect._backward_step_unrolled`` with the finite-difference HVP."""
        weights = self.model.weight_parameters()
        grads = torch.autograd.grad(self._loss(x, y), weights)
        unrolled = {}
        for name, w, g in zip(self.names, weights, grads):
            buf = self.w_opt.state.get(w, {}).get("momentum_buffer")
            moment = self.momentum * buf if buf is not None else torch.zeros_like(w)
            unrolled[name] = (w - self.lr * (moment + g + self.weight_decay * w)).detach().requires_grad_()
        alphas = self.model.arch_parameters()
        unrolled_list = [unrolled[n] for n in self.names]
        loss = self._loss(xv, yv, unrolled)
        d_alpha = self._alpha_grad(loss, retain_graph=True)
        vector = torch.autograd.grad(loss, unrolled_list)
        radius = 0.01 / torch.cat([v.reshape(-1) for v in vector]).norm()
        with torch.no_grad():
            for w, v in zip(weights, vector):
                w.add_(v, alpha=radius)
        grads_p = self._alpha_grad(self._loss(x, y))
        with torch.no_grad():
            for w, v in zip(weights, vector):
                w.sub_(v, alpha=2 * radius)
        grads_n = self._alpha_grad(self._loss(x, y))
        with torch.no_grad():
            for w, v in zip(weights, vector):
                w.add_(v, alpha=radius)
        for a, d, gp, gn in zip(alphas, d_alpha, grads_p, grads_n):
            a.grad = d - self.lr * (gp - gn) / (2 * radius)

    def step(self, x, y, xv, yv):
        self.a_opt.zero_grad()
        if self.order == "first":
            self._loss(xv, yv).backward(inputs=self.model.arch_parameters())
        else:
            self._arch_step_second_order(x, y, xv, yv)
        self.a_opt.step()
        self.w_opt.zero_grad()
        loss = self._loss(x, y)
        loss.backward(inputs=self.model.weight_parameters())
        nn.utils.clip_grad_norm_(self.model.weight_parameters(), self.grad_clip)
        self.w_opt.step()
        return loss.detach()
