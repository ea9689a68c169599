"""Knowledge distillation: losses and the pre-stored teacher-logit store (FDM)."""
