"""Reinforcement fine-tuning (training.objective: grpo) on the peft backend: the model samples answers to prompts, graders
score them, and the answers better than their group's mean are made more likely (trainer/objectives/grpo.py's loss).

rewards.py   training.grpo.graders -> weighted graders; a step's answers scored in parallel
sampling.py  the policy's answers to a batch of prompts (transformers' generate), as token ids and loss rows
loop.py      the loop, top to bottom: sample, grade, advantages, old and reference log-probs, accumulate, step, log, checkpoint
recipe.py    setup -> the dry run (can the reward teach anything?) -> the loop -> save, reusing the peft backend's steps
The prompts themselves are data (trainer/data/prompts.py).
"""
