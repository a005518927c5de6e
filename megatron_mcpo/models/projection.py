"""The MCPO projection head g_φ: Linear(d, h) – ReLU – Linear(h, p), fp32.

It lives on the last pipeline stage, outside Megatron DDP and the Megatron optimizer: its gradients
come from the gathered pool (identical on every rank), so it is replicated, has its own AdamW and its
own grad clip, is saved as common checkpoint state and is never part of HF export or refit. (Inside
DDP, a parameter that gets no gradient in a backward — GRPO runs, a frozen head — trips DDP's checks.)
"""
from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    def __init__(self, d_model: int, hidden_dim: int, out_dim: int, seed: int = 0):
        super().__init__()
        # Same seed on every rank: the replicas start identical and stay identical.
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(d_model, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim)).float()
        torch.random.set_rng_state(gen_state)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [N, d_model] -> u [N, out_dim] (before L2 normalisation), fp32."""
        return self.net(h.float())


class ProjectionTrainer:
    """The head, its AdamW and its grad clip. `frozen` keeps φ at its initialisation (ablation)."""

    def __init__(self, head: ProjectionHead, lr: float, weight_decay: float, grad_clip: float, frozen: bool = False):
        self.head = head
        self.frozen = frozen
        self.grad_clip = grad_clip
        for p in head.parameters():
            p.requires_grad_(not frozen)
        self.optimizer = None if frozen else torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)

    def zero_grad(self) -> None:
        self.head.zero_grad(set_to_none=True)

    def step(self) -> dict:
        """Clip and step; returns {'proj_grad_norm': ...} (0 when frozen or no gradient arrived)."""
        params = [p for p in self.head.parameters() if p.grad is not None]
        if self.frozen or not params:
            return {"proj_grad_norm": 0.0}
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip > 0 else float("inf"))
        self.optimizer.step()
        return {"proj_grad_norm": float(norm)}

    def state_dict(self) -> dict:
        return {"head": self.head.state_dict(), "optimizer": None if self.optimizer is None else self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])


def build_projector(mcpo, d_model: int, seed: int, device) -> ProjectionTrainer:
    """The run's head (initialised on the host from `seed`, so every device starts from the same φ) on
    `device`, with its optimizer. `mcpo`: the config's MCPOConfig."""
    head = ProjectionHead(d_model, mcpo.proj_hidden_dim, mcpo.proj_dim, seed=seed).to(device)
    return ProjectionTrainer(head, mcpo.proj_lr, mcpo.proj_weight_decay, mcpo.proj_grad_clip, mcpo.frozen_head)
