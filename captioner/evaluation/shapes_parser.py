"""Reading a shapes caption back into the statements it makes, by the generator's own grammar.

``shapes_captions.py`` writes every caption from a few phrase patterns; this module reads any
sentence built from those patterns back into *statements* (what ``truth.py`` checks against the
scene), and refuses with :class:`UnparsedCaption` whatever it cannot read, rather than guess.

Captions are lower-cased, ``,`` and ``.`` are split off as words of their own (so the model's
``"a red circle , a blue square ."`` reads like the reference ``"A red circle, a blue square."``), and
one final ``.`` is dropped. The grammar, over those words (``[x]`` optional, ``|`` alternatives)::

    caption    = ALL pred_all | "both shapes are" pred_all | definite "is" pred_the
               | [prefix] items [tail]
    prefix     = "there is" | "there are" | "a picture of" | "the picture shows" | "an image with"
    items      = item | item {[","] item} "and" item          a list: "a, b and c"
    item       = quantity [SIZE] [COLOUR] noun                 "two red shapes", "a small star"
    quantity   = "a" | "an" | "a single" | "only one" | "just one" | "zero" .. "four"
    noun       = SHAPE | "shape" | "object", plural after a number other than one
    tail       = "in the picture" | "on a" BACKGROUND "background"
               | REGION | RELATION ("a" | "an") [SIZE] [COLOUR] noun      (REGION and RELATION: one "a" item only)
    definite   = "the" [SIZE] [COLOUR] noun
    pred_the   = COLOUR | SIZE | ("a" | "an") SHAPE | REGION | RELATION definite
    pred_all   = COLOUR | SIZE | SHAPE + "s"                  ALL = "all the shapes are"

Two tolerances, neither of which changes a meaning: "a" and "an" (and "there is"/"there are") are
interchangeable, and the commas of a list may be missing (the blind baseline's captions have lost
their punctuation: "a red circle a blue square and a green star").

What the words mean is ``shapes_scene.py``'s definition: "a red circle" at least one, "two red
circles" exactly two, "the red circle" exactly one fits. A list of two or more items that each say
"a"/"an" with a colour and a shape ("a red circle and a small blue square") is the generator's
*whole-scene* caption: all the objects, from left to right. A single item ("a small red circle on a
plain background") only says the object is there, because the generator writes the same words for
one object of a larger scene too.

>>> parse_caption("The red circle is to the left of the star.")[-1]
Related(a=NounPhrase('the red circle'), relation='to the left of', b=NounPhrase('the star'))
>>> parse_caption("Two small shapes and one large shape in the picture")
(Exists(phrase=NounPhrase('exactly 2 small shapes')), Exists(phrase=NounPhrase('exactly 1 large shape')))
>>> [len(s.items) for s in parse_caption("A red circle , a blue square and a green star .")]
[3]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from captioner.data.shapes_scene import BACKGROUNDS, COLOURS, SHAPES, SIZES, SceneObject

# The generator's position and relation phrases (``shapes_scene.regions`` and ``relations`` give
# the ones that hold; tests/test_truth.py checks that these lists are the generator's).
REGIONS = ("on the left", "on the right", "at the top", "at the bottom", "in the top left", "in the top right",
           "in the bottom left", "in the bottom right", "in the middle")
RELATIONS = ("to the left of", "to the right of", "above", "below")
PREFIXES = ("there is", "there are", "a picture of", "the picture shows", "an image with")
NUMBERS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "a single": 1, "only one": 1, "just one": 1}
ARTICLES = ("a", "an")  # "at least one"
ANY_NOUNS = ("shape", "object")  # nouns that say nothing about the shape
BACKGROUND_WORDS = {word: kind for kind, word in BACKGROUNDS.items()}  # "speckled" -> "noise"


class UnparsedCaption(ValueError):
    """The caption is not in the grammar; the message says where reading stopped."""


@dataclass(frozen=True)
class Description:
    """What a noun phrase says about an object; None = not said. "small red shape" -> size and colour."""

    size: str | None = None
    colour: str | None = None
    shape: str | None = None

    def fits(self, obj: SceneObject) -> bool:
        return all(getattr(self, f.name) in (None, getattr(obj, f.name)) for f in fields(self))

    def __repr__(self) -> str:
        said = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if getattr(self, f.name))
        return f"Description({said})"

    def __str__(self) -> str:
        return " ".join(word for word in (self.size, self.colour, self.shape or "shape") if word)


@dataclass(frozen=True)
class NounPhrase:
    """``count``: exactly that many objects fit (None: at least one); ``definite``: "the", exactly one fits."""

    description: Description
    count: int | None = None
    definite: bool = False

    def __repr__(self) -> str:
        return f"NounPhrase({str(self)!r})"

    def __str__(self) -> str:
        if self.definite:
            return f"the {self.description}"
        if self.count is None:
            return f"a {self.description}"
        return f"exactly {self.count} {self.description}{'' if self.count == 1 else 's'}"


# The statements a caption makes; truth.py checks each against the scene.
@dataclass(frozen=True)
class Exists:
    """The objects ``phrase`` speaks of are there: "two red shapes", "a circle", "the star"."""

    phrase: NounPhrase


@dataclass(frozen=True)
class HasAttribute:
    """``subject`` (None: every object) has ``value`` as its ``attribute`` (size, colour or shape)."""

    subject: NounPhrase | None
    attribute: str
    value: str


@dataclass(frozen=True)
class InRegion:
    phrase: NounPhrase
    region: str


@dataclass(frozen=True)
class Related:
    a: NounPhrase
    relation: str
    b: NounPhrase


@dataclass(frozen=True)
class OnBackground:
    kind: str  # a key of BACKGROUNDS


@dataclass(frozen=True)
class SceneList:
    """The whole scene, object by object from left to right."""

    items: tuple[Description, ...]


Statement = Exists | HasAttribute | InRegion | Related | OnBackground | SceneList


def normalise_caption(text: str) -> list[str]:
    """``"A red circle , a blue square ."`` -> ``["a", "red", "circle", ",", "a", "blue", "square"]``."""
    words = re.sub(r"([,.])", r" \1 ", text.lower()).split()
    return words[:-1] if words[-1:] == ["."] else words


class _Words:
    """A cursor over the words of a caption."""

    def __init__(self, words: list[str]):
        self.words, self.i = words, 0

    def peek(self, *phrases: str) -> str | None:
        """The first of ``phrases`` that the next words spell, else None."""
        for phrase in phrases:
            n = len(phrase.split())
            if self.words[self.i : self.i + n] == phrase.split():
                return phrase
        return None

    def take(self, *phrases: str) -> str | None:
        """Like :meth:`peek`, and step over the phrase found."""
        found = self.peek(*phrases)
        if found is not None:
            self.i += len(found.split())
        return found

    def need(self, *phrases: str) -> str:
        found = self.take(*phrases)
        if found is None:
            self.fail(" or ".join(repr(p) for p in phrases))
        return found

    def fail(self, wanted: str):
        seen = " ".join(self.words[self.i :]) or "the end"
        raise UnparsedCaption(f"expected {wanted} at word {self.i + 1}, found {seen!r}")


def _noun(w: _Words, plural: bool) -> str | None:
    """A noun's shape (None for "shape"/"object"), in the number ``plural`` asks for."""
    ending = "s" if plural else ""
    found = w.need(*(noun + ending for noun in (*SHAPES, *ANY_NOUNS)))
    shape = found[: len(found) - len(ending)]
    return None if shape in ANY_NOUNS else shape


def _description(w: _Words, plural: bool) -> Description:
    size, colour = w.take(*SIZES), w.take(*COLOURS)
    return Description(size, colour, _noun(w, plural))


def _item(w: _Words) -> tuple[NounPhrase, bool]:
    """One quantified noun phrase, and whether it was written with "a"/"an"."""
    number = w.take(*NUMBERS)  # before the articles: "a single" starts with "a"
    if number is None:
        w.need(*ARTICLES)
        return NounPhrase(_description(w, plural=False)), True
    count = NUMBERS[number]
    return NounPhrase(_description(w, plural=count != 1), count), False


def _items(w: _Words) -> list[tuple[NounPhrase, bool]]:
    """``a, b and c`` (the commas may be missing), or a single item."""
    items = [_item(w)]
    while True:
        if w.take(","):
            items.append(_item(w))
        elif w.take("and"):
            items.append(_item(w))
            return items
        elif w.peek(*ARTICLES, *NUMBERS):
            items.append(_item(w))
        elif len(items) > 1:
            w.fail("'and' before the last item of a list")
        else:
            return items


def _definite(w: _Words) -> NounPhrase:
    w.need("the")
    return NounPhrase(_description(w, plural=False), definite=True)


def _attribute(w: _Words, subject: NounPhrase | None, plural: bool) -> HasAttribute:
    """The attribute after "is"/"are": a colour, a size, or a shape ("a star"; "stars" after "are")."""
    for attribute, values in (("colour", COLOURS), ("size", SIZES)):
        value = w.take(*values)
        if value:
            return HasAttribute(subject, attribute, value)
    if plural:
        return HasAttribute(subject, "shape", w.need(*(s + "s" for s in SHAPES))[:-1])
    w.need(*ARTICLES)
    return HasAttribute(subject, "shape", w.need(*SHAPES))


def _about_the(w: _Words) -> list[Statement]:
    """"the X is red", "the X is on the left", "the X is above the Y"."""
    subject = _definite(w)
    w.need("is")
    region = w.take(*REGIONS)
    if region:
        return [Exists(subject), InRegion(subject, region)]
    relation = w.take(*RELATIONS)
    if relation:
        other = _definite(w)
        return [Exists(subject), Exists(other), Related(subject, relation, other)]
    return [Exists(subject), _attribute(w, subject, plural=False)]


def _described(w: _Words) -> list[Statement]:
    """[prefix] items [tail]: inventories, counts, lists, one object, a position or a relation."""
    w.take(*PREFIXES)
    items = _items(w)
    phrases = [phrase for phrase, _ in items]
    if len(items) > 1 and all(article and p.description.colour and p.description.shape for p, article in items):
        statements: list[Statement] = [SceneList(tuple(p.description for p in phrases))]
    else:
        statements = [Exists(p) for p in phrases]
    if w.take("in the picture"):
        return statements
    if w.take("on a"):
        kind = BACKGROUND_WORDS[w.need(*BACKGROUND_WORDS)]
        w.need("background")
        return statements + [OnBackground(kind)]
    position = w.take(*REGIONS, *RELATIONS)
    if position is None:
        return statements
    if len(items) != 1 or not items[0][1]:
        raise UnparsedCaption(f"{position!r} needs one object with 'a'/'an' before it")
    if position in REGIONS:
        return statements + [InRegion(phrases[0], position)]
    w.need(*ARTICLES)
    other = NounPhrase(_description(w, plural=False))
    return statements + [Exists(other), Related(phrases[0], position, other)]


def parse_caption(text: str) -> tuple[Statement, ...]:
    """The statements of a caption; raises :class:`UnparsedCaption` on text outside the grammar."""
    w = _Words(normalise_caption(text))
    if not w.words:
        raise UnparsedCaption("empty caption")
    if w.take("all the shapes are"):
        statements = [_attribute(w, None, plural=True)]
    elif w.take("both shapes are"):
        statements = [Exists(NounPhrase(Description(), count=2)), _attribute(w, None, plural=True)]
    elif w.words[0] == "the" and w.words[:3] != ["the", "picture", "shows"]:
        statements = _about_the(w)
    else:
        statements = _described(w)
    if w.i != len(w.words):
        w.fail("the end")
    return tuple(statements)
