"""Which tokens carried a prediction: leave-one-out occlusion over the tokens the run's tokenizer makes.

Each token's score is how much the predicted label's probability drops when that one token is left out
(positive: the token pushed toward the label; negative: against it). A text of L tokens and its L
variants go through the model as one batch, so explaining a text costs one forward pass over L + 1 rows.
Tokens cut off by --max-length are never seen by the model and score 0.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from .predict import Prediction, Predictor, softmax
from .tokenizer import PAD_ID, truncate, unknown_id

TOKENS_PER_PASS = 1 << 17  # rows x length of one forward pass; a 256-token text's 257 rows fit in one


@dataclass
class TokenScore:
    token: str  # the token's characters in the original text
    start: int
    end: int
    score: float


@dataclass
class Explanation:
    prediction: Prediction
    tokens: list[TokenScore]

    def as_json(self) -> list[dict]:
        return [dict(token=t.token, score=t.score, start=t.start, end=t.end) for t in self.tokens]


def explain(predictor: Predictor, text: str) -> Explanation:
    """The prediction for `text` and one occlusion score per token, in text order."""
    config, tokenizer = predictor.run.config, predictor.run.tokenizer
    encoding = tokenizer.encode(text, add_special_tokens=False)
    seen = truncate(list(range(len(encoding.ids))), config.max_length, config.truncation)
    ids = [encoding.ids[i] for i in seen]
    variants = [ids or [unknown_id(tokenizer)]]
    variants += [ids[:i] + ids[i + 1:] or [unknown_id(tokenizer)] for i in range(len(ids))]
    probabilities = _probabilities(predictor, variants)
    best = int(probabilities[0].argmax())
    drops = dict(zip(seen, (probabilities[0, best] - probabilities[1:, best]).tolist()))
    names = predictor.run.labels.names
    prediction = Prediction(text, names[best], float(probabilities[0, best]),
                            {n: float(p) for n, p in zip(names, probabilities[0])})
    tokens = [TokenScore(text[start:end], start, end, drops.get(i, 0.0))
              for i, (start, end) in enumerate(encoding.offsets)]
    return Explanation(prediction, tokens)


def explain_stream(predictor: Predictor, chunks: Iterable[list[str]]) -> Iterator[Explanation]:
    for texts in chunks:
        for text in texts:
            yield explain(predictor, text)


def _probabilities(predictor: Predictor, rows: list[list[int]]) -> np.ndarray:
    """Class probabilities of token-id rows, in as few forward passes as TOKENS_PER_PASS allows, on the
    predictor's backend (torch or ONNX)."""
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    ids = np.full((len(rows), int(lengths.max())), PAD_ID, dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
    step = max(1, TOKENS_PER_PASS // ids.shape[1])
    return np.concatenate([softmax(predictor.scorer.logits(ids[i:i + step], lengths[i:i + step]))
                           for i in range(0, len(rows), step)])


# -- terminal view -------------------------------------------------------------------------------------

MARKED = 3  # strongest tokens each way named after the text, so the view reads without colour
VISIBLE = 0.05  # share of the text's largest |score| below which a token is left plain


def render(explanation: Explanation, colour: bool):
    """The text with each token shaded green (toward the label) or red (against) by its score, then the
    strongest tokens each way with their scores; without colour, those carry their score inline too."""
    from rich.style import Style
    from rich.text import Text

    p, text = explanation.prediction, explanation.prediction.text
    scale = max((abs(t.score) for t in explanation.tokens), default=0.0) or 1.0
    toward, against = _strongest(explanation.tokens, scale)
    marked = {id(t) for t in toward + against}
    view = Text.assemble((f"{p.label} {p.probability:.4f}", "bold"), "  ")
    at = 0
    for token in explanation.tokens:
        view.append(text[at:token.start])
        share = abs(token.score) / scale
        if colour and share >= VISIBLE:
            view.append(token.token, Style(color="black", bgcolor=_shade(token.score > 0, share),
                                           bold=share >= 0.5))
        else:
            view.append(token.token)
        if not colour and id(token) in marked:
            view.append(f"[{token.score:+.3f}]", style="bold")
        at = token.end
    view.append(text[at:])
    summary = Text(f"  toward {p.label}: {_listing(toward)} | against: {_listing(against)}", style="dim")
    return view, summary


def _strongest(tokens: list[TokenScore], scale: float) -> tuple[list[TokenScore], list[TokenScore]]:
    visible = [t for t in tokens if abs(t.score) >= VISIBLE * scale and t.score != 0]
    return (sorted((t for t in visible if t.score > 0), key=lambda t: -t.score)[:MARKED],
            sorted((t for t in visible if t.score < 0), key=lambda t: t.score)[:MARKED])


def _listing(tokens: list[TokenScore]) -> str:
    return ", ".join(f"{t.token!r} {t.score:+.3f}" for t in tokens) or "-"


def _shade(toward: bool, share: float) -> str:
    """A background from pale to full green or red as the share of the text's largest score grows."""
    full = (60, 190, 75) if toward else (225, 70, 60)
    level = 0.25 + 0.75 * share
    return "#" + "".join(f"{round(255 + (c - 255) * level):02x}" for c in full)


def print_explanations(explanations: Iterable[Explanation], console=None) -> None:
    from rich.console import Console

    console = console or Console(highlight=False, soft_wrap=True)
    colour = console.color_system is not None and not console.no_color
    for explanation in explanations:
        for line in render(explanation, colour):
            console.print(line)


# -- faithfulness --------------------------------------------------------------------------------------

def deletion_drops(predictor: Predictor, texts: list[str], k: int = 2, seed: int = 0) -> dict:
    """The check that the scores are faithful: the mean drop in the predicted label's probability when
    the k top-scored tokens are deleted from the text, against deleting k tokens at random.

    Deletion cuts the tokens' characters out of the text and predicts it again through the ordinary
    predict path (re-tokenized), independent of the occlusion code. Texts of at most k tokens, and
    texts longer than --max-length (whose cut tokens score 0), are left out."""
    rng = random.Random(seed)
    explained = [explain(predictor, text) for text in texts]
    explained = [e for e in explained if k < len(e.tokens) <= predictor.run.config.max_length]
    top, chance = [], []
    for e in explained:
        top.append(_without(e.prediction.text, sorted(e.tokens, key=lambda t: -t.score)[:k]))
        chance.append(_without(e.prediction.text, rng.sample(e.tokens, k)))
    drops = {}
    for name, edited in (("top", top), ("random", chance)):
        after = predictor.predict(edited)
        drops[name] = float(np.mean([e.prediction.probability - a.probabilities[e.prediction.label]
                                     for e, a in zip(explained, after)])) if explained else 0.0
    return dict(texts=len(explained), k=k, top_drop=drops["top"], random_drop=drops["random"],
                ratio=drops["top"] / drops["random"] if drops["random"] > 0 else float("inf"))


def _without(text: str, tokens: list[TokenScore]) -> str:
    for token in sorted(tokens, key=lambda t: -t.start):
        text = text[:token.start] + " " + text[token.end:]
    return text
