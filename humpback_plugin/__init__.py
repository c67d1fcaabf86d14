"""Instruction backtranslation (Humpback, Li et al. 2023) for vLLM servers and Axolotl trainers."""

__version__ = "0.1.0"

SYSTEM_SEED = "Answer in the style of an AI Assistant."
SYSTEM_AUGMENTED = "Answer with knowledge from web search."
