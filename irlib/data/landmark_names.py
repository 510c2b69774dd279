"""The text step of train-test overlap detection: GLDv2 category names matched against the test landmarks' names.

CiDeR (Song et al., CVPR 2024) found 17 of the 18 GLDv2-clean landmarks it removed visually, and one more, the
Hôtel des Invalides, by matching landmark names as text. This module is that step:

* :data:`REVISITED_LANDMARKS`: the 11 ROxf and 11 RPar landmarks, keyed by the prefix of their query names in the
  revisitop ground truth (``all_souls`` of ``all_souls_000013``, ``paris_invalides``, ...), with synonyms (English,
  French, Wikimedia Commons spellings) and the city that hints at them;
* :func:`normalise_name`: URL-decoding, the ``Category:`` prefix and underscores removed, case-folded, accents and
  punctuation dropped, stop words ("the", "de", "des", "of", ...) left out;
* :func:`match_landmark_names`: every GLDv2 category (``train_label_to_category.csv``) that contains all the tokens
  of some name of a test landmark, scored (below), as :class:`NameMatch`;
* :func:`name_candidates`: those matches as :class:`irlib.data.overlap.OverlapCandidate` (``source="text"``), to
  merge with the visual ones (:func:`irlib.data.overlap.merge_candidates`) and review by hand.

Score of a category ``C`` against a name ``V`` (token sets, stop words out; the landmark's city and hint tokens
``H`` taken out of both): ``0.5 + 0.4 |V| / |C - H| + 0.1 [C meets H]``, when ``V`` is a subset of ``C``. An exact
match scores 0.9, 1.0 with the city named ("Christ Church, Oxford"); extra words lower it ("Christ Church, New
Zealand": 0.7). A one-word name matches a longer category only when it is at least half the category's words or the
city is named. A match is evidence for a person to judge, not a decision: "Christ Church" and "Notre-Dame" name
many places.
"""

from __future__ import annotations

import os
import re
import unicodedata
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from irlib.data.gldv2 import read_label_to_category
from irlib.data.overlap import OverlapCandidate
from irlib.data.revisited import RevisitedDataset
from irlib.data.train_set import TrainSet

__all__ = [
    "REVISITED_LANDMARKS",
    "STOP_WORDS",
    "NameMatch",
    "EvalLandmark",
    "category_name",
    "landmark_of_query",
    "landmark_table",
    "match_landmark_names",
    "name_candidates",
    "name_tokens",
    "normalise_name",
    "query_landmarks",
]

STOP_WORDS: frozenset[str] = frozenset(
    {"the", "of", "and", "at", "in", "on", "de", "des", "du", "la", "le", "les", "l", "d", "et", "en", "a", "au"}
)
"""Words left out of names before matching (English and French articles and prepositions)."""

_ABBREVIATIONS = {"st": "saint", "ste": "sainte", "mt": "mount"}
_LIGATURES = str.maketrans({"œ": "oe", "æ": "ae", "ø": "o", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "ı": "i"})
_CATEGORY = re.compile(r"category:", re.IGNORECASE)
_NON_WORD = re.compile(r"[\W_]+")
_NUMBERED = re.compile(r"(.+)_\d+")


@dataclass(frozen=True)
class EvalLandmark:
    """A test landmark and the names it goes by.

    Attributes:
        key: the prefix of its query names in the test set's ground truth (``"radcliffe_camera"``).
        dataset: the test set (``"roxford5k"``, ``"rparis6k"``, ``"demo"``).
        name: its usual name.
        synonyms: other names: translations, Wikimedia Commons category titles, parts that name it.
        city: the city a category may name to confirm a match (raises the score, never required).
        hints: other such words (a district: ``"Montmartre"``).
    """

    key: str
    dataset: str
    name: str
    synonyms: tuple[str, ...] = ()
    city: str = ""
    hints: tuple[str, ...] = ()

    @property
    def variants(self) -> tuple[str, ...]:
        """The name, then the synonyms."""
        return (self.name, *self.synonyms)

    @property
    def hint_tokens(self) -> frozenset[str]:
        """Normalised tokens of the city and the hints."""
        return frozenset(t for h in (self.city, *self.hints) if h for t in name_tokens(h))


def _oxf(key: str, name: str, *synonyms: str, hints: tuple[str, ...] = ()) -> EvalLandmark:
    return EvalLandmark(key, "roxford5k", name, synonyms, "Oxford", hints)


def _par(key: str, name: str, *synonyms: str, hints: tuple[str, ...] = ()) -> EvalLandmark:
    return EvalLandmark(key, "rparis6k", name, synonyms, "Paris", hints)


REVISITED_LANDMARKS: tuple[EvalLandmark, ...] = (
    _oxf("all_souls", "All Souls College", "All Souls College, Oxford", "Codrington Library"),
    _oxf("ashmolean", "Ashmolean Museum", "Ashmolean Museum of Art and Archaeology", "Ashmolean"),
    _oxf("balliol", "Balliol College", "Balliol College, Oxford"),
    _oxf("bodleian", "Bodleian Library", "Bodleian Libraries", "Old Bodleian Library", "Schools Quadrangle"),
    _oxf("christ_church", "Christ Church", "Christ Church, Oxford", "Christ Church Cathedral, Oxford", "Tom Tower"),
    _oxf("cornmarket", "Cornmarket Street", "Cornmarket", "St Michael at the North Gate"),
    _oxf("hertford", "Hertford College", "Bridge of Sighs (Oxford)", "Hertford Bridge"),
    _oxf("keble", "Keble College", "Keble College Chapel"),
    _oxf("magdalen", "Magdalen College", "Magdalen College, Oxford", "Magdalen Tower"),
    _oxf(
        "pitt_rivers",
        "Pitt Rivers Museum",
        "Oxford University Museum of Natural History",
        "University Museum of Natural History",
    ),
    _oxf("radcliffe_camera", "Radcliffe Camera", "Camera Bodleiana", "Radcliffe Square"),
    _par("paris_defense", "La Défense", "Grande Arche", "Grande Arche de la Défense", "Arche de la Défense"),
    _par("paris_eiffel", "Eiffel Tower", "Tour Eiffel", "La Tour Eiffel"),
    _par("paris_invalides", "Hôtel des Invalides", "Les Invalides", "Dôme des Invalides", "Église du Dôme"),
    _par(
        "paris_louvre",
        "Louvre",
        "Musée du Louvre",
        "Louvre Museum",
        "Palais du Louvre",
        "Louvre Palace",
        "Louvre Pyramid",
        "Pyramide du Louvre",
    ),
    _par("paris_moulinrouge", "Moulin Rouge"),
    _par("paris_museedorsay", "Musée d'Orsay", "Orsay Museum", "Gare d'Orsay"),
    _par(
        "paris_notredame",
        "Notre-Dame de Paris",
        "Cathédrale Notre-Dame de Paris",
        "Notre Dame Cathedral",
        hints=("Île de la Cité",),
    ),
    _par("paris_pantheon", "Panthéon", "Panthéon de Paris", "Pantheon (Paris)"),
    _par("paris_pompidou", "Centre Georges Pompidou", "Centre Pompidou", "Pompidou Centre", "Beaubourg"),
    _par(
        "paris_sacrecoeur",
        "Sacré-Cœur",
        "Basilique du Sacré-Cœur",
        "Basilique du Sacré-Cœur de Montmartre",
        "Basilica of the Sacred Heart of Paris",
        "Sacré-Cœur Basilica",
        hints=("Montmartre",),
    ),
    _par("paris_triomphe", "Arc de Triomphe", "Arc de Triomphe de l'Étoile", "Triumphal Arch (Paris)"),
)
"""The 11 ROxf and 11 RPar landmarks, keyed by their query-name prefixes in revisitop's ``gnd_*.pkl`` (some queries
carry a generic prefix, ``oxford_`` or ``paris_general_``: :func:`query_landmarks` assigns them by their
positives). The Hôtel des Invalides is the landmark CiDeR found by text."""


@dataclass(frozen=True)
class NameMatch:
    """A GLDv2 landmark whose category names a test landmark.

    Attributes:
        landmark_id: the GLDv2 ``landmark_id``.
        category: its category name, decoded (``"Hôtel des Invalides"``).
        test_landmark: key of the test landmark named.
        dataset: that landmark's test set.
        matched_name: the name or synonym matched, as written in the table.
        score: in [0.5, 1], see the module docstring.
        exact: the category's words are those of the name (city words aside).
        hint: the category names the city or a hint.
    """

    landmark_id: int
    category: str
    test_landmark: str
    dataset: str
    matched_name: str
    score: float
    exact: bool
    hint: bool


def category_name(category: str) -> str:
    """The readable title of a Wikimedia category: URL-decoded (twice at most, for ``%25`` escapes), the text up to
    the last ``Category:`` (or, without one, up to the URL's last ``/``) dropped, underscores made spaces.

    ``"http://commons.wikimedia.org/wiki/Category:H%C3%B4tel_des_Invalides"`` -> ``"Hôtel des Invalides"``.
    """
    text = category.strip()
    for _ in range(2):
        decoded = urllib.parse.unquote(text)
        if decoded == text:
            break
        text = decoded
    found = list(_CATEGORY.finditer(text))
    if found:
        text = text[found[-1].end() :]
    elif "://" in text:
        text = text.rstrip("/").rsplit("/", 1)[-1]
    return " ".join(text.replace("_", " ").split())


def name_tokens(text: str, stop_words: frozenset[str] = STOP_WORDS) -> tuple[str, ...]:
    """The words of a name or category for matching: :func:`category_name`, case-folded, accents stripped (NFKD,
    ligatures spelled out: œ -> oe), anything but letters and digits a separator, ``stop_words`` dropped, ``st``
    spelled ``saint``."""
    text = unicodedata.normalize("NFKD", category_name(text).casefold())
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).translate(_LIGATURES)
    words = (_ABBREVIATIONS.get(w, w) for w in _NON_WORD.sub(" ", text).split())
    return tuple(w for w in words if w not in stop_words)


def normalise_name(text: str) -> str:
    """``name_tokens`` joined by spaces: ``"Category:Basilique_du_Sacr%C3%A9-C%C5%93ur"`` -> ``"basilique sacre
    coeur"``."""
    return " ".join(name_tokens(text))


def landmark_table(
    names: Mapping[str, Sequence[str]], dataset: str, city: str = "", hints: Sequence[str] = ()
) -> tuple[EvalLandmark, ...]:
    """Test landmarks from ``{key: [name, *synonyms]}`` (e.g. the demo's ``demo_info.json``
    ``test_landmark_names``)."""
    out = []
    for key, variants in names.items():
        if isinstance(variants, str) or not variants:
            raise ValueError(f"test landmark {key!r}: expected a non-empty list of names, got {variants!r}")
        out.append(EvalLandmark(str(key), dataset, str(variants[0]), tuple(map(str, variants[1:])), city, tuple(hints)))
    return tuple(out)


def match_landmark_names(
    categories: Mapping[int, str] | str | os.PathLike,
    landmarks: Sequence[EvalLandmark] = REVISITED_LANDMARKS,
    *,
    landmark_ids: Iterable[int] | None = None,
    min_score: float = 0.0,
) -> list[NameMatch]:
    """GLDv2 landmarks whose category names a test landmark (CiDeR's text step), best first.

    ``categories``: ``{landmark_id: category}`` or the path of ``train_label_to_category.csv``; ``landmark_ids``
    restricts to those (e.g. the GLDv2-clean classes: the category file lists all 203k GLDv2 landmarks). Each
    landmark keeps its best match (ties: the longer name, then table order); the list is sorted by decreasing score,
    then landmark id. An inverted index over category words makes the 203k categories take a few seconds.
    """
    if not isinstance(categories, Mapping):
        categories = read_label_to_category(categories)
    wanted = None if landmark_ids is None else {int(i) for i in landmark_ids}
    tokens: dict[int, frozenset[str]] = {}
    index: dict[str, set[int]] = {}
    for lid, category in categories.items():
        if wanted is not None and lid not in wanted:
            continue
        words = frozenset(name_tokens(category))
        tokens[lid] = words
        for w in words:
            index.setdefault(w, set()).add(lid)
    best: dict[int, tuple[tuple[float, int, int], NameMatch]] = {}
    for order, lm in enumerate(landmarks):
        hints = lm.hint_tokens
        for variant in lm.variants:
            words = frozenset(name_tokens(variant)) - hints
            if not words:
                continue
            hits = set.intersection(*(index.get(w, set()) for w in words))
            for lid in hits:
                rest = tokens[lid] - hints
                has_hint = bool(tokens[lid] & hints)
                coverage = len(words) / len(rest)
                if len(words) == 1 and coverage < 0.5 and not has_hint:
                    continue
                score = round(0.5 + 0.4 * coverage + 0.1 * has_hint, 6)
                if score < min_score:
                    continue
                rank = (score, len(words), -order)
                if lid in best and best[lid][0] >= rank:
                    continue
                match = NameMatch(
                    landmark_id=int(lid),
                    category=category_name(categories[lid]),
                    test_landmark=lm.key,
                    dataset=lm.dataset,
                    matched_name=variant,
                    score=score,
                    exact=rest == words,
                    hint=has_hint,
                )
                best[lid] = (rank, match)
    return sorted((m for _, m in best.values()), key=lambda m: (-m.score, m.landmark_id))


def name_candidates(
    matches: Sequence[NameMatch],
    *,
    train_set: TrainSet | None = None,
    test_set: RevisitedDataset | None = None,
    landmarks: Sequence[EvalLandmark] = REVISITED_LANDMARKS,
) -> list[OverlapCandidate]:
    """The matches as overlap candidates (``source="text"``, ``score`` the name score, ``similarity`` NaN).

    With ``train_set``, each shows the landmark's first image; with ``test_set``, the first query of the test
    landmark named (per :func:`query_landmarks` with ``landmarks``), cropped to its box, so the reviewer can compare.
    """
    first_image: dict[int, int] = {}
    if train_set is not None:
        for i, lid in enumerate(train_set.original_labels.tolist()):
            first_image.setdefault(int(lid), i)
    first_query: dict[str, int] = {}
    if test_set is not None:
        for i, key in enumerate(query_landmarks(test_set, landmarks).values()):
            if key is not None:
                first_query.setdefault(key, i)
    out = []
    for m in matches:
        i = first_image.get(m.landmark_id)
        q = first_query.get(m.test_landmark)
        out.append(
            OverlapCandidate(
                landmark_id=m.landmark_id,
                score=m.score,
                similarity=float("nan"),
                train_image=None if i is None else train_set.paths[i],  # type: ignore[union-attr]
                test_image=None if q is None else test_set.image_path(test_set.qimlist[q]),  # type: ignore[union-attr]
                test_box=None if q is None else tuple(float(v) for v in test_set.bbx[q]),  # type: ignore[union-attr]
                query="" if q is None else test_set.qimlist[q],  # type: ignore[union-attr]
                source="text",
                matched_name=m.matched_name,
                category=m.category,
                name_score=m.score,
                matched_landmark=m.test_landmark,
            )
        )
    return out


def _prefix(name: str) -> str:
    m = _NUMBERED.fullmatch(name)
    return m.group(1) if m else name


def landmark_of_query(query: str, landmarks: Sequence[EvalLandmark] = REVISITED_LANDMARKS) -> EvalLandmark | None:
    """The test landmark a query's name says (its prefix before ``_<digits>``), or None (``oxford_002985``)."""
    key = _prefix(query)
    return next((lm for lm in landmarks if lm.key == key), None)


def query_landmarks(
    test_set: RevisitedDataset, landmarks: Sequence[EvalLandmark] = REVISITED_LANDMARKS
) -> dict[str, str | None]:
    """``{query: key of the test landmark it shows}``, from its easy and hard positives' name prefixes (the most
    common key among them; ties: table order), else its own prefix, else None.

    The positives decide because the names do not always: ROxf has 15 ``oxford_*`` queries and ``bodleian_000132``
    shows the Radcliffe Camera; RPar's ``paris_general_*`` queries show the Eiffel Tower.
    """
    order = {lm.key: k for k, lm in enumerate(landmarks)}
    prefixes = [_prefix(n) for n in test_set.imlist]
    out: dict[str, str | None] = {}
    for query, entry in zip(test_set.qimlist, test_set.gnd, strict=True):
        counts: dict[str, int] = {}
        for i in list(entry["easy"]) + list(entry["hard"]):
            key = prefixes[int(i)]
            if key in order:
                counts[key] = counts.get(key, 0) + 1
        if counts:
            out[query] = min(counts, key=lambda k: (-counts[k], order[k]))
        else:
            own = _prefix(query)
            out[query] = own if own in order else None
    return out
