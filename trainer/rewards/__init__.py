"""Reward functions: a registry of name -> callable (images, prompts) -> Tensor (B,)."""

from trainer.rewards.registry import RewardFn, available_rewards, build_reward, register_reward

__all__ = ["RewardFn", "available_rewards", "build_reward", "register_reward"]
