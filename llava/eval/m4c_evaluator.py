"""VQA-style answer normalisation and accuracy (the TextVQA / VQAv2 / VizWiz evaluation rules).

The rules, as the VQA evaluation documents them:

* lower-case; drop "," and "?"; split a possessive "'s" off its word; newlines and tabs become spaces;
* punctuation ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when it touches a space in the answer or
  when the answer has a comma between digits ("1,000"), and is replaced by a space otherwise;
* a period is removed unless a digit follows it (decimals such as "2.5" keep theirs);
* number words "none"/"zero" .. "ten" become digits; the articles "a", "an", "the" are dropped;
* a contraction written without its apostrophe gets it back ("dont" -> "don't", "couldntve" forms too);
* accuracy of an answer against n human answers: for each of the n leave-one-out subsets of n - 1 humans,
  ``min(#humans in the subset who gave that answer / 3, 1)``; the n values are averaged (n = 10 in these datasets).

``EvalAIAnswerProcessor`` and ``TextVQAAccuracyEvaluator`` keep the names (and call signatures) upstream scripts
import: ``EvalAIAnswerProcessor()(answer) -> str`` and ``TextVQAAccuracyEvaluator().eval_pred_list(
[{"pred_answer": str, "gt_answers": [str, ...]}, ...]) -> float`` in [0, 1]. ``STVQAANLSEvaluator`` (ANLS) and
``TextCapsBleu4Evaluator`` (corpus BLEU-4) take the same list.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import combinations

__all__ = ["CONTRACTIONS", "EvalAIAnswerProcessor", "STVQAANLSEvaluator", "STVQAAccuracyEvaluator",
           "TextCapsBleu4Evaluator", "TextVQAAccuracyEvaluator", "edit_distance", "vqa_accuracy"]

# Contractions whose apostrophe-free spelling is not itself an ordinary word (so "its", "well", "were", "shell",
# "ill", "lets", "shed", "wed" are left alone). Upper-case forms ("I'm") never match: answers are lower-cased first.
_CANONICAL_CONTRACTIONS = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd he'd've
he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've might've mustn't must've needn't not've
o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't shouldn't've somebody'd somebody'd've somebody'll
somebody's someone'd someone'd've someone'll someone's something'd something'd've something'll that's there'd
there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've we've weren't what'll
what're what's what've when's where'd where's where've who'd who'd've who'll who's who've why'll why're why's won't
would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've
""".split()


def _without_one_apostrophe(word: str) -> Iterable[str]:
    """Every spelling of ``word`` with exactly one of its apostrophes left out."""
    positions = [i for i, ch in enumerate(word) if ch == "'"]
    for i in positions:
        yield word[:i] + word[i + 1 :]


#: misspelt contraction -> the contraction (e.g. "dont" -> "don't", "couldnt've" -> "couldn't've")
CONTRACTIONS: dict[str, str] = {
    variant: word for word in _CANONICAL_CONTRACTIONS for variant in _without_one_apostrophe(word)
}
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
               "!"]
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")


class EvalAIAnswerProcessor:
    """Normalise a free-form answer the way the VQA / TextVQA / VizWiz evaluation servers do."""

    def word_tokenize(self, word: str) -> str:
        """Lower-case, drop "," and "?", split off a possessive "'s"."""
        return word.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()

    def process_punctuation(self, in_text: str) -> str:
        """Delete or blank out punctuation (see the module rules), then remove periods not before a digit."""
        delete_all = _DIGIT_COMMA_DIGIT.search(in_text) is not None
        out_text = in_text
        for p in PUNCTUATION:
            touches_space = (p + " ") in in_text or (" " + p) in in_text
            out_text = out_text.replace(p, "" if (touches_space or delete_all) else " ")
        return _PERIOD_NOT_BEFORE_DIGIT.sub("", out_text)

    def process_digit_article(self, in_text: str) -> str:
        """Number words to digits, articles dropped, missing contraction apostrophes restored; words re-joined."""
        words = [NUMBER_WORDS.get(w, w) for w in in_text.lower().split()]
        words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
        return " ".join(words)

    def __call__(self, item: str) -> str:
        item = self.word_tokenize(item)
        item = item.replace("\n", " ").replace("\t", " ").strip()
        item = self.process_punctuation(item)
        return self.process_digit_article(item)


def vqa_accuracy(answer: str, human_answers: Sequence[str]) -> float:
    """Mean over the leave-one-out subsets of ``human_answers`` of ``min(matches in the subset / 3, 1)``.

    Both sides must already be normalised. Written as the definition (one subset at a time), not a shortcut.
    """
    n = len(human_answers)
    if n < 2:
        raise ValueError(f"VQA accuracy needs at least 2 human answers, got {n}")
    scores = []
    for subset in combinations(range(n), n - 1):
        matches = sum(1 for i in subset if human_answers[i] == answer)
        scores.append(min(matches / 3.0, 1.0))
    return sum(scores) / len(scores)


class TextVQAAccuracyEvaluator:
    """Soft VQA accuracy of predictions against (usually 10) human answers each."""

    def __init__(self) -> None:
        self.answer_processor = EvalAIAnswerProcessor()

    def _compute_answer_scores(self, raw_answers: Sequence[str]) -> dict[str, float]:
        """Accuracy each distinct (normalised) human answer would get."""
        answers = [self.answer_processor(a) for a in raw_answers]
        return {unique: vqa_accuracy(unique, answers) for unique in Counter(answers)}

    def eval_pred_list(self, pred_list: Sequence[dict]) -> float:
        """Mean accuracy over ``[{"pred_answer": str, "gt_answers": [str, ...]}, ...]`` (0 for an empty list)."""
        if not pred_list:
            return 0.0
        total = 0.0
        for entry in pred_list:
            prediction = self.answer_processor(entry["pred_answer"])
            total += self._compute_answer_scores(entry["gt_answers"]).get(prediction, 0.0)
        return total / len(pred_list)


class STVQAAccuracyEvaluator:
    """Exact match after normalisation against any of the ground-truth answers (ST-VQA accuracy)."""

    def __init__(self) -> None:
        self.answer_processor = EvalAIAnswerProcessor()

    def eval_pred_list(self, pred_list: Sequence[dict]) -> float:
        if not pred_list:
            return 0.0
        hits = 0
        for entry in pred_list:
            prediction = self.answer_processor(entry["pred_answer"])
            hits += prediction in {self.answer_processor(a) for a in entry["gt_answers"]}
        return hits / len(pred_list)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions, each costing 1) between two strings."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


class STVQAANLSEvaluator:
    """Average Normalised Levenshtein Similarity (ST-VQA's ANLS).

    Both strings are lower-cased and stripped; an answer scores ``1 - edit_distance / max(len)`` against a ground
    truth when that is at least ``threshold`` (0.5), else 0; a prediction takes its best ground truth; the result is
    the mean over predictions. Upstream used the ``editdistance`` package; :func:`edit_distance` computes the same
    distance without it.
    """

    threshold = 0.5

    def get_anls(self, s1: str, s2: str) -> float:
        s1, s2 = s1.lower().strip(), s2.lower().strip()
        longest = max(len(s1), len(s2))
        if longest == 0:
            return 1.0  # two empty strings are identical (upstream divided by zero here)
        similarity = 1.0 - edit_distance(s1, s2) / longest
        return similarity if similarity >= self.threshold else 0.0

    def eval_pred_list(self, pred_list: Sequence[dict]) -> float:
        """Mean ANLS over ``[{"pred_answer": str, "gt_answers": [str, ...]}, ...]`` (0 for an empty list)."""
        if not pred_list:
            return 0.0
        total = 0.0
        for entry in pred_list:
            total += max((self.get_anls(entry["pred_answer"], gt) for gt in entry["gt_answers"]), default=0.0)
        return total / len(pred_list)


_PUNCT_TABLE = str.maketrans({ch: " " for ch in string.punctuation})


def _caption_tokens(text: str) -> list[str]:
    """Lower-case, punctuation to spaces, split on whitespace."""
    return text.lower().translate(_PUNCT_TABLE).split()


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


class TextCapsBleu4Evaluator:
    """Corpus BLEU-4 of predicted captions against reference captions (TextCaps' metric).

    Upstream ran pycocoevalcap's ``PTBTokenizer`` (Java) and ``Bleu(4)``; neither is used here. This is a
    self-contained re-implementation of the same computation: captions are lower-cased, punctuation removed and split
    on whitespace (close to, but not byte-identical with, the PTB tokenizer); for n = 1..4 the clipped n-gram matches
    and the hypothesis n-gram counts are summed over the whole corpus; the score is the geometric mean of the four
    precisions times the brevity penalty ``exp(1 - r / c)`` when the total hypothesis length ``c`` is below the total
    reference length ``r``, where each caption's reference length is that of its closest reference (the shorter on a
    tie, coco-caption's "closest" option). Like coco-caption, tiny constants (1e-15 / 1e-9) keep a zero precision
    from dividing by zero, so such a corpus scores about 0.
    """

    max_n = 4
    _TINY = 1e-15
    _SMALL = 1e-9

    def eval_pred_list(self, pred_list: Sequence[dict]) -> float:
        """BLEU-4 in [0, 1] over ``[{"pred_answer": str, "gt_answers": [str, ...]}, ...]`` (0 for an empty list)."""
        if not pred_list:
            return 0.0
        matches = [0] * self.max_n
        guesses = [0] * self.max_n
        hyp_len = ref_len = 0
        for entry in pred_list:
            hyp = _caption_tokens(entry["pred_answer"])
            refs = [_caption_tokens(r) for r in entry["gt_answers"]]
            if not refs:
                raise ValueError("TextCapsBleu4Evaluator: an entry has no reference captions")
            hyp_len += len(hyp)
            ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
            for n in range(1, self.max_n + 1):
                hyp_counts = _ngrams(hyp, n)
                max_ref: Counter = Counter()
                for r in refs:
                    max_ref |= _ngrams(r, n)
                matches[n - 1] += sum(min(c, max_ref[g]) for g, c in hyp_counts.items())
                guesses[n - 1] += max(len(hyp) - n + 1, 0)
        log_precision = sum(
            math.log((m + self._TINY) / (g + self._SMALL)) for m, g in zip(matches, guesses)
        ) / self.max_n
        brevity = 1.0 if hyp_len >= ref_len else math.exp(1.0 - ref_len / (hyp_len + self._TINY))
        return math.exp(log_precision) * brevity
