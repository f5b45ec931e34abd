"""The evaluation metrics of the text_similarity grader, each a score in [0, 1] from a library that computes it here.

- fuzzy_match: rapidfuzz's `fuzz.ratio` (the normalised Indel similarity of the two strings) / 100.
- bleu: NLTK's `sentence_bleu` (up to 4-grams, equal weights) with Chen & Cherry's smoothing 1, so a short answer
  with no 4-gram in common scores a little above 0 rather than exactly 0; the texts split by NLTK's wordpunct tokenizer.
- gleu: NLTK's `sentence_gleu` (Google's sentence-level BLEU, 1- to 4-grams), the same tokens.
- meteor: NLTK's `meteor_score`, which needs the WordNet data NLTK downloads separately (`python -m nltk.downloader
  wordnet`); without it the metric is refused when the grader is read, not at the first line.
- rouge_1 ... rouge_5, rouge_l: Google's rouge-score (F-measure, no stemming), as `trainer eval`'s rouge_l.
- cosine: refused: OpenAI computes it with one of its embedding models, which does not run here.
NLTK comes with rouge-score; both are dependencies of trainer.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

METRICS = ("fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l", "cosine")

Similarity = Callable[[str, str], float]  # (input, reference) -> score


def _fuzzy_match(text: str, reference: str) -> float:
    from rapidfuzz import fuzz

    return fuzz.ratio(text, reference) / 100.0


def _tokens(text: str) -> list[str]:
    from nltk.tokenize import wordpunct_tokenize

    return wordpunct_tokenize(text)


def _bleu(text: str, reference: str) -> float:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    hypothesis = _tokens(text)
    if not hypothesis:
        return 0.0
    return float(sentence_bleu([_tokens(reference)], hypothesis, smoothing_function=SmoothingFunction().method1))


def _gleu(text: str, reference: str) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    return float(sentence_gleu([_tokens(reference)], _tokens(text)))


def _meteor(text: str, reference: str) -> float:
    from nltk.translate.meteor_score import meteor_score

    return float(meteor_score([_tokens(reference)], _tokens(text)))


@lru_cache(maxsize=None)
def _rouge_scorer(kind: str):  # type: ignore[no-untyped-def]  # rouge_score is untyped
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind], use_stemmer=False)


def _rouge(kind: str) -> Similarity:
    def score(text: str, reference: str) -> float:
        return float(_rouge_scorer(kind).score(reference, text)[kind].fmeasure)

    return score


SIMILARITIES: dict[str, Similarity] = {
    "fuzzy_match": _fuzzy_match, "bleu": _bleu, "gleu": _gleu, "meteor": _meteor,
    **{f"rouge_{n}": _rouge(f"rouge{n}") for n in range(1, 6)}, "rouge_l": _rouge("rougeL"),
}


def unavailable(metric: str) -> str | None:
    """Why `metric` cannot be computed here (with what to do instead), or None when it can."""
    if metric == "cosine":
        return ("cosine needs one of OpenAI's embedding models, which trainer does not call; use rouge_l, bleu or fuzzy_match, "
                "or a score_model grader to judge meaning.")
    if metric == "meteor":
        import nltk

        try:
            nltk.data.find("corpora/wordnet")
        except LookupError:
            return ("meteor needs NLTK's WordNet data, which is not installed here: run `python -m nltk.downloader wordnet` "
                    "once (it downloads the data), or use rouge_l, bleu or gleu.")
    return None
