"""Graders: score a model's output for reinforcement fine-tuning (issue #27) and for `trainer grade`.

The grader objects are OpenAI's (string_check, text_similarity, score_model, python, multi), read from YAML or JSON as
OpenAI documents them, plus trainer's `builtin` type for the measures `trainer eval` already has. docs/graders.md is
the guide. The modules, in the order a grade flows through them:

- parse.py: a grader object -> a typed grader (objects.py), or a UserError listing every problem with its key path.
- templates.py: the {{ item.x }} / {{ sample.output_text }} templates (Jinja2, sandboxed, StrictUndefined).
- grade.py: grade(grader, sample, item) -> Grade(score, error, parts), never an exception; fields_read(grader).
- similarity.py, builtin.py, model.py, sandbox.py, formula.py: each grader type's scoring.
- answers.py: the lines `trainer grade --input` reads.
"""
from trainer.graders.grade import Grade, fields_read, grade
from trainer.graders.objects import Grader
from trainer.graders.parse import load_grader, parse_grader, read_grader

__all__ = ["Grade", "Grader", "fields_read", "grade", "load_grader", "parse_grader", "read_grader"]
