"""Prompts in verl's format: {prompt: [messages], data_source, reward_model: {ground_truth}, extra_info}."""
