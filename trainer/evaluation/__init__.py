"""Evaluation: did fine-tuning beat the untuned model and few-shot prompting, and what does it save?"""
