"""Step rules for the lambdas: Adam (the paper's) and :class:`TensorwiseAdam` (one step scale per schedule)."""

from __future__ import annotations

import torch


class TensorwiseAdam(torch.optim.Optimizer):
    """Adam with one second-moment estimate per tensor instead of one per element (the block-wise idea of
    Adam-mini, Zhang et al. 2024, with the whole schedule as one block).

    Why it matters here: plain Adam divides every lambda's gradient by its own running magnitude, so its first
    step moves *every* lambda by ``lr`` whatever its gradient, and a lambda whose gradient is tiny noise (an early,
    content-deciding step the style hardly depends on) drifts as far as the ones that matter. Sharing the scale
    keeps Adam's step size (the root mean square step over the learned entries is about ``lr``) but moves each
    lambda in proportion to its gradient, so steps that barely affect the loss stay where they started.

    A param group may carry a bool ``mask`` (broadcastable to its tensors): the entries that are learned. The
    shared scale is the mean square gradient over those entries only, so freezing steps does not enlarge the step
    of the others.
    """

    def __init__(self, params, lr: float = 0.05, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, mask=None))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros((), dtype=p.dtype, device=p.device)  # one per tensor
                state["step"] += 1
                t = float(state["step"])
                square = p.grad.pow(2)
                if group["mask"] is not None:
                    square = square[torch.broadcast_to(group["mask"].to(p.device), p.shape)]
                state["exp_avg"].lerp_(p.grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).add_(square.mean(), alpha=1 - beta2)
                m_hat = state["exp_avg"] / (1 - beta1**t)
                v_hat = state["exp_avg_sq"] / (1 - beta2**t)
                p.add_(m_hat / (v_hat.sqrt() + group["eps"]), alpha=-group["lr"])
        return loss


OPTIMIZERS = {"adam": torch.optim.Adam, "tensorwise-adam": TensorwiseAdam}
