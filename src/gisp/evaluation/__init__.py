"""Evaluation tasks: perplexity, answer perplexity, multiple choice, GSM8K, speed."""
