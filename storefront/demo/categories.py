"""Categories for Online Retail items, derived from their descriptions by keyword rules (the data has none).

Why rules and not clustering: the descriptions are short all-caps product names ("WHITE HANGING HEART T-LIGHT
HOLDER"); a handful of head nouns decide what a thing is, and rules make every assignment explainable to a
merchandiser ("it says CANDLE, so it is in Candles & lights"). Rules are tried in order; the first whose keyword
appears as a word of the description wins, so specific kinds (jewellery, seasonal) come before generic ones
(home decor). Items matching no rule go to "Other". On the demo data about 85% of items land in a named category.
"""

from __future__ import annotations

import re

RULES: list[tuple[str, str, tuple[str, ...]]] = [
    (
        "christmas",
        "Christmas & seasonal",
        (
            "CHRISTMAS",
            "XMAS",
            "ADVENT",
            "SANTA",
            "REINDEER",
            "SNOWFLAKE",
            "SNOWMAN",
            "EASTER",
            "NATIVITY",
        ),
    ),
    (
        "jewellery",
        "Jewellery & accessories",
        (
            "NECKLACE",
            "EARRINGS",
            "BRACELET",
            "RING",
            "CHARM",
            "DIAMANTE",
            "BEAD",
            "BEADS",
            "BROOCH",
            "JEWELLED",
            "HAIR",
            "HAIRCLIP",
            "BANGLE",
            "PENDANT",
        ),
    ),
    (
        "lighting",
        "Candles & lights",
        (
            "CANDLE",
            "CANDLES",
            "T-LIGHT",
            "T-LIGHTS",
            "TEALIGHT",
            "LANTERN",
            "LIGHT",
            "LIGHTS",
            "LAMP",
            "INCENSE",
            "CANDLEHOLDER",
            "NIGHTLIGHT",
        ),
    ),
    ("bags", "Bags & purses", ("BAG", "BAGS", "PURSE", "SHOPPER", "HANDBAG", "WALLET")),
    (
        "party",
        "Party & celebration",
        (
            "PARTY",
            "BIRTHDAY",
            "BUNTING",
            "BALLOON",
            "BALLOONS",
            "NAPKINS",
            "CONFETTI",
            "WEDDING",
        ),
    ),
    (
        "stationery",
        "Cards, wrap & stationery",
        (
            "CARD",
            "CARDS",
            "WRAP",
            "PAPER",
            "NOTEBOOK",
            "PEN",
            "PENS",
            "PENCIL",
            "PENCILS",
            "STICKERS",
            "STICKER",
            "TAPE",
            "RIBBON",
            "RIBBONS",
            "ENVELOPE",
            "ENVELOPES",
            "BOOK",
            "ERASER",
            "RUBBER",
            "CALENDAR",
            "DIARY",
        ),
    ),
    (
        "kitchen",
        "Kitchen & dining",
        (
            "MUG",
            "MUGS",
            "CUP",
            "CUPS",
            "TEA",
            "TEACUP",
            "COFFEE",
            "CAKE",
            "CAKESTAND",
            "BOWL",
            "BOWLS",
            "PLATE",
            "PLATES",
            "CUTLERY",
            "JAR",
            "JARS",
            "PANTRY",
            "KITCHEN",
            "LUNCH",
            "DINNER",
            "TRAY",
            "APRON",
            "JAM",
            "DISH",
            "BAKING",
            "SPOON",
            "SPOONS",
            "TEAPOT",
            "BEAKER",
            "GLASSES",
            "TUMBLER",
            "NAPKIN",
            "CHOPSTICKS",
            "OVEN",
            "TOAST",
            "SUGAR",
            "EGG",
            "BISCUIT",
            "CASES",
            "MOULD",
            "COASTER",
            "COASTERS",
            "PICNIC",
        ),
    ),
    (
        "kids",
        "Toys & children",
        (
            "TOY",
            "TOYS",
            "JIGSAW",
            "DOLLY",
            "DOLL",
            "CHILDRENS",
            "CHILDREN'S",
            "GAME",
            "GAMES",
            "SPACEBOY",
            "FELTCRAFT",
            "KIT",
            "PLAYHOUSE",
            "SOLDIER",
            "SOLDIERS",
            "CRAYONS",
            "SKIPPING",
            "DOMINOES",
            "PUZZLE",
            "TEDDY",
            "BABY",
            "NURSERY",
            "PUPPET",
            "BALL",
        ),
    ),
    (
        "garden",
        "Garden & outdoor",
        (
            "GARDEN",
            "PARASOL",
            "UMBRELLA",
            "WATERING",
            "PLANT",
            "PLANTER",
            "BIRDHOUSE",
            "FEEDER",
            "SEED",
            "SEEDS",
            "FLOWERPOT",
            "GNOME",
            "HAMMOCK",
        ),
    ),
    (
        "textiles",
        "Textiles & bathroom",
        (
            "CUSHION",
            "THROW",
            "BLANKET",
            "TOWEL",
            "TOWELS",
            "BATHROOM",
            "SPONGE",
            "SOAP",
            "DOORMAT",
            "MAT",
            "HOT WATER BOTTLE",
            "QUILT",
            "TISSUES",
            "SCARF",
            "GLOVES",
            "SLIPPERS",
            "WARMER",
        ),
    ),
    (
        "storage",
        "Storage & organisation",
        (
            "BOX",
            "BOXES",
            "STORAGE",
            "BASKET",
            "BASKETS",
            "TIN",
            "TINS",
            "DRAWER",
            "CABINET",
            "CRATE",
            "CHEST",
            "HOLDER",
            "RACK",
            "TRUNK",
            "CASE",
        ),
    ),
    (
        "decor",
        "Home decor",
        (
            "HEART",
            "HEARTS",
            "DECORATION",
            "SIGN",
            "FRAME",
            "MIRROR",
            "CLOCK",
            "HOOK",
            "HOOKS",
            "WALL",
            "KNOB",
            "GARLAND",
            "WREATH",
            "PHOTO",
            "HANGER",
            "HANGING",
            "ORNAMENT",
            "VASE",
            "PICTURE",
            "PLAQUE",
            "DOORSTOP",
            "CHIME",
            "MAGNET",
            "MAGNETS",
            "FLOWER",
            "FLOWERS",
            "BIRD",
            "STAR",
        ),
    ),
]

_WORD = re.compile(r"[A-Z0-9'\-]+")


def _compile() -> list[tuple[str, frozenset[str], tuple[str, ...]]]:
    compiled = []
    for key, _name, keywords in RULES:
        words = frozenset(k for k in keywords if " " not in k)
        phrases = tuple(k for k in keywords if " " in k)
        compiled.append((key, words, phrases))
    return compiled


_COMPILED = _compile()
OTHER = ("other", "Other")
CATEGORY_NAMES: dict[str, str] = {key: name for key, name, _ in RULES} | {OTHER[0]: OTHER[1]}


def categorize(description: str) -> str:
    """The category key for a product description (``"other"`` when no rule matches)."""
    text = description.upper()
    words = set(_WORD.findall(text))
    for key, keywords, phrases in _COMPILED:
        if words & keywords or any(phrase in text for phrase in phrases):
            return key
    return OTHER[0]
