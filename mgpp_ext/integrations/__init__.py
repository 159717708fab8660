"""Integrations with training frameworks (Hugging Face Trainer, accelerate)."""
from .hf import MGPPCallback, TrainerMGPP, add_mgpp_callback, unwrap_optimizer

__all__ = ["MGPPCallback", "TrainerMGPP", "add_mgpp_callback", "unwrap_optimizer"]
