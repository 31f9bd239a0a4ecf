"""The seed's controlled values, in one place: angles, atmosphere, sizes, filters (the tools and
modes are the task registry's, `serving.tasks`).

Prompt templates built from these live in `prompts.py`.
"""

from __future__ import annotations

QUALITIES = ("low", "medium", "high")
OUTPUT_FORMATS = ("png", "webp", "jpeg")
BACKGROUNDS = ("opaque", "auto")

# The seed's aspect ratios and exact output sizes (width, height); `original` = model/input default.
ASPECT_RATIOS: dict[str, tuple[int, int] | None] = {
    "original": None,
    "2.4:1": (2400, 1008),
    "21:9": (2560, 1088),
    "16:9": (2048, 1152),
    "3:2": (1920, 1280),
    "4:3": (1920, 1440),
    "1:1": (1536, 1536),
    "4:5": (1536, 1920),
    "3:4": (1536, 2048),
    "2:3": (1360, 2032),
    "9:16": (1440, 2560),
}
ASPECT_RATIO_LABELS = {
    "original": "Original · Auto", "2.4:1": "Cinematic", "21:9": "Ultra Wide",
    "16:9": "Landscape", "3:2": "Photo", "4:3": "Classic", "1:1": "Square", "4:5": "IG Post",
    "3:4": "Portrait", "2:3": "Tall Photo", "9:16": "Reels",
}

# Dashboard cube: 5 camera heights x 8 sides = 40 exact values, e.g. "eye level, left side".
ANGLE_HEIGHTS = ("bird's eye view", "high angle", "eye level", "low angle", "worm's eye view")
ANGLE_SIDES = ("front", "front-right", "right side", "rear-right", "rear", "rear-left",
               "left side", "front-left")
ANGLES = tuple(f"{height}, {side}" for height in ANGLE_HEIGHTS for side in ANGLE_SIDES)

TIMES = ("Deep Night", "Neon Night", "Blue Hour", "Dawn", "Bright Day", "Golden Hour", "Dusk")
DEFAULT_TIME = "Bright Day"

# Seasons and weathers map to the seed's exact atmosphere strings.
SEASONS: dict[str, str] = {
    "Spring": "spring color palette with fresh greens and soft seasonal light, no precipitation "
              "unless selected as weather",
    "Summer": "summer color palette with warmer light and saturated greenery, no precipitation "
              "unless selected as weather",
    "Autumn": "autumn color palette with warmer orange foliage and softer light, no precipitation "
              "unless selected as weather",
    "Winter": "winter color palette with cool tones and crisp light only; do not add snow unless "
              "Snowy weather is selected",
}
WEATHERS: dict[str, str] = {
    "Clear": "clear clean sky, bright natural visibility, no clouds, no rain, no snow, no fog",
    "Cloudy": "clearly visible soft gray and white clouds across the sky, diffused overcast light, "
              "no rain or snow",
    "Rainy": "dark gray storm clouds, visibly falling blue-white rain streaks and droplets, wet "
             "reflective surfaces, moody low light",
    "Snowy": "very bright snowy atmosphere with a few soft clouds and visible white to pale blue "
             "falling snowflakes, no rain",
    "Foggy": "visible mist and low fog layers with softened contrast and diffused light, no rain "
             "or snow",
}

AI_FILTERS = ("golden-backlight", "blue-hour", "polaroid", "cinematic-still", "noir-bw")

UPSCALE_SCALES = (2, 4, "4k")
UPSCALE_4K_HEIGHT = 2160  # "4k" targets 2160p: the output's shorter side becomes 2160 px.
NOISE_SCALE_RANGE = (0.0, 0.5)
DEFAULT_NOISE_SCALE = 0.1

CAROUSEL_FRAMES = 10
# The one image size cap (uploads, base64 sources, fetched URLs, decoding) and media-type table
# (format name as in `output_format`, lower case → media type).
MAX_IMAGE_BYTES = 50 * 1024 * 1024
IMAGE_MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
