"""Every backend prompt in one place: modes, angles, atmosphere, carousel plans, AI filters.

The client's `text_prompt` is only ever *appended* as an additional instruction
(`with_instruction`); it never replaces the backend prompt. Season and weather strings are the
seed's exact values (`vocabulary.SEASONS` / `vocabulary.WEATHERS`), used verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass

from .vocabulary import ANGLE_HEIGHTS, ANGLE_SIDES, SEASONS, TIMES, WEATHERS

QUALITY_SUFFIX = "photorealistic, high detail, natural skin and materials, sharp focus"
NEGATIVE_PROMPT = ("blurry, lowres, deformed, distorted anatomy, extra limbs, watermark, text, "
                   "logo, jpeg artifacts, oversaturated")


def with_instruction(backend_prompt: str, text_prompt: str | None) -> str:
    """The backend prompt, plus the client's text as an additional instruction when given."""
    extra = (text_prompt or "").strip()
    if not extra:
        return backend_prompt
    return f"{backend_prompt}. Additional instruction: {extra}"


# ---- generator / editor -----------------------------------------------------------------------
def generator_prompt(prompt: str) -> str:
    return f"{prompt.strip()}, {QUALITY_SUFFIX}"


def editor_prompt(prompt: str) -> str:
    base = ("edit the first image while keeping its composition, subject identity and lighting; "
            "take style and content cues from the reference images")
    return with_instruction(base, prompt)


# Words that ask the generator for a cut-out subject (see generate.wants_transparent_background).
TRANSPARENT_BACKGROUND_WORDS = ("transparent background", "no background", "isolated",
                                "cut-out", "cutout", "cut out", "png sticker", "sticker",
                                "alpha background", "without background")


# ---- photographer modes -----------------------------------------------------------------------
PERSON_PLACEMENT = ("place the person from the reference photos naturally into this scene, same "
                    "identity, face and body proportions, matching perspective, scale, lighting "
                    "direction, shadows and color grade of the scene, standing on the ground with a soft "
                    "contact shadow at the feet, " + QUALITY_SUFFIX)
CLOTH_CHANGE = ("the same person wearing a new outfit, same pose, face, identity, body shape and "
                "background, realistic fabric folds and fit, lighting consistent with the photo, "
                + QUALITY_SUFFIX)
CLOTH_CHANGE_DEFAULT_OUTFIT = "a tasteful contemporary outfit"
LOCATION_CHANGE = ("the same subject in a new location, preserve identity, pose, wardrobe, camera "
                   "angle, lens feel, color grade, photo style and lighting logic; change only "
                   "the environment, " + QUALITY_SUFFIX)
OBJECT_PLACEMENT = ("insert the described object into the photo, correct scale and perspective, "
                    "contact shadows and reflections consistent with the scene lighting, "
                    + QUALITY_SUFFIX)
OBJECT_PLACEMENT_DEFAULT = "a small decorative object"
ERASE = ("clean empty background, remove the object, seamless continuation of the surrounding "
         "texture, lighting and perspective, nothing in the masked area")
ERASE_NEGATIVE = "object, person, text, watermark, artifacts, blur, smudge, duplicate"
FILL = ("fill the masked area seamlessly, matching the surrounding lighting, perspective, grain "
        "and color grade, " + QUALITY_SUFFIX)


def person_placement_prompt(text_prompt: str) -> str:
    return with_instruction(PERSON_PLACEMENT, text_prompt)


def cloth_change_prompt(text_prompt: str) -> str:
    outfit = text_prompt.strip() or CLOTH_CHANGE_DEFAULT_OUTFIT
    return f"{CLOTH_CHANGE}, outfit: {outfit}"


def location_change_prompt(text_prompt: str) -> str:
    return f"{LOCATION_CHANGE}, new location: {text_prompt.strip()}"


def object_placement_prompt(text_prompt: str) -> str:
    return f"{OBJECT_PLACEMENT}, object: {text_prompt.strip() or OBJECT_PLACEMENT_DEFAULT}"


def erase_prompt(text_prompt: str) -> tuple[str, str]:
    """(prompt, negative): erase when the text is empty, otherwise fill the mask with the text."""
    text = text_prompt.strip()
    if not text:
        return ERASE, ERASE_NEGATIVE
    return f"{FILL}, fill with: {text}", NEGATIVE_PROMPT


# ---- angle change: 5 heights x 8 sides = the 40 cube values -----------------------------------
ANGLE_HEIGHT_PHRASES: dict[str, str] = {
    "bird's eye view": "bird's eye view, camera high overhead looking steeply down at the subject",
    "high angle": "high angle shot, camera above eye level looking down at the subject",
    "eye level": "eye level shot, camera at the subject's eye height, straight-on perspective",
    "low angle": "low angle shot, camera below eye level looking up at the subject",
    "worm's eye view": "worm's eye view, camera near the ground looking steeply up at the subject",
}
ANGLE_SIDE_PHRASES: dict[str, str] = {
    "front": "seen from the front",
    "front-right": "seen from the front-right, three-quarter view",
    "right side": "seen from the right side, profile view",
    "rear-right": "seen from the rear-right, three-quarter back view",
    "rear": "seen from behind, back view",
    "rear-left": "seen from the rear-left, three-quarter back view",
    "left side": "seen from the left side, profile view",
    "front-left": "seen from the front-left, three-quarter view",
}
assert tuple(ANGLE_HEIGHT_PHRASES) == ANGLE_HEIGHTS and tuple(ANGLE_SIDE_PHRASES) == ANGLE_SIDES

ANGLE_PRESERVE = ("same subject, same identity, outfit and scene, consistent lighting, "
                  "re-photographed from the new camera position, " + QUALITY_SUFFIX)


def split_angle(angle: str) -> tuple[str, str]:
    """'eye level, left side' → ('eye level', 'left side')."""
    height, side = angle.split(", ", 1)
    return height, side


def angle_prompt(angle: str, text_prompt: str = "") -> str:
    height, side = split_angle(angle)
    camera = f"{ANGLE_HEIGHT_PHRASES[height]}, {ANGLE_SIDE_PHRASES[side]}"
    return with_instruction(f"{camera}, {ANGLE_PRESERVE}", text_prompt)


ANGLE_PROMPTS: dict[str, str] = {
    f"{height}, {side}": angle_prompt(f"{height}, {side}")
    for height in ANGLE_HEIGHTS for side in ANGLE_SIDES
}


# ---- time change: time phrases + the seed's season / weather strings --------------------------
TIME_PHRASES: dict[str, str] = {
    "Deep Night": "deep night, dark sky, moonlight and practical artificial lights, low ambient "
                  "light, deep shadows",
    "Neon Night": "night lit by colorful neon signs, magenta and cyan glow, reflections on "
                  "surfaces, urban night mood",
    "Blue Hour": "blue hour just after sunset, deep blue sky, soft even cool light, city lights "
                 "starting to glow",
    "Dawn": "dawn, first light of the morning, soft pastel pink and peach sky, low gentle light",
    "Bright Day": "bright daylight, high sun, clear natural light, crisp shadows",
    "Golden Hour": "golden hour, low warm sun, long soft shadows, warm golden glow and rim light",
    "Dusk": "dusk, fading evening light, warm horizon turning to dusky purple, soft shadows",
}
assert tuple(TIME_PHRASES) == TIMES

ATMOSPHERE_PRESERVE = ("same scene, same subject, composition and camera, only the time of day, "
                       "season and weather change, " + QUALITY_SUFFIX)


def atmosphere_string(time: str, season: str | None = None, weather: str | None = None) -> str:
    """The dashboard's atmosphere string: time phrase, then the exact season and weather text."""
    parts = [TIME_PHRASES[time]]
    if season is not None:
        parts.append(SEASONS[season])
    if weather is not None:
        parts.append(WEATHERS[weather])
    return ", ".join(parts)


def atmosphere_prompt(time: str, season: str | None, weather: str | None,
                      text_prompt: str = "") -> str:
    return with_instruction(f"{atmosphere_string(time, season, weather)}, {ATMOSPHERE_PRESERVE}",
                            text_prompt)


# ---- carousel ---------------------------------------------------------------------------------
CAROUSEL_PLANNER_INSTRUCTION = (
    "You are a photographer planning a 10-frame social media carousel re-shot from one photo.\n"
    "Photo: {description}\n"
    "Client request: {request}\n"
    "Answer with one JSON object only: {{\"shots\": [10 shots]}}. Each shot is an object with\n"
    "- \"prompt\": what the frame shows, one sentence;\n"
    "- \"framing\": one of {framings};\n"
    "- \"angle\": \"<height>, <side>\", height one of {heights}, side one of {sides};\n"
    "- \"time\": one of {times}, or null; \"season\": one of {seasons}, or null;\n"
    "  \"weather\": one of {weathers}, or null.\n"
    "Vary the set like a photographer: wide, hero, medium, close-up and detail framings, several "
    "camera angles, and a few frames at another time of day or weather. Keep the same subject, "
    "outfit and scene. Example shot: {example}"
)
CAROUSEL_PLANNER_RETRY = ("Your previous answer was rejected: {error}. Answer again with the JSON "
                          "object only, exactly 10 shots, values spelled as listed.")
CAROUSEL_FRAME = ("carousel frame: {shot}. Same subject, identity, outfit, scene and color grade "
                  "as the source photo, " + QUALITY_SUFFIX)


def carousel_frame_prompt(shot: str, text_prompt: str = "") -> str:
    return with_instruction(CAROUSEL_FRAME.format(shot=shot), text_prompt)


# ---- AI filters (fixed, server-side) ----------------------------------------------------------
@dataclass(frozen=True)
class FilterRecipe:
    """img2img prompt + strength, then a deterministic grade (see `filters.apply_grade`)."""

    prompt: str
    negative_prompt: str
    strength: float
    # Grade: per-channel gain (r, g, b), saturation factor, contrast factor, gamma, grayscale,
    # fade (lift of the blacks, 0..1), warm/cool tint and an optional instant-photo frame.
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    saturation: float = 1.0
    contrast: float = 1.0
    gamma: float = 1.0
    grayscale: bool = False
    fade: float = 0.0
    vignette: float = 0.0
    polaroid_frame: bool = False


FILTER_RECIPES: dict[str, FilterRecipe] = {
    "golden-backlight": FilterRecipe(
        prompt="golden hour backlight, warm sun behind the subject, glowing rim light on hair and "
               "shoulders, soft lens flare, warm airy haze, " + QUALITY_SUFFIX,
        negative_prompt="cold tones, harsh flash, flat light, " + NEGATIVE_PROMPT,
        strength=0.35, gain=(1.08, 1.0, 0.86), saturation=1.08, contrast=1.02, gamma=0.95),
    "blue-hour": FilterRecipe(
        prompt="blue hour ambience, deep blue twilight sky, cool even light, glowing warm city "
               "lights, calm moody atmosphere, " + QUALITY_SUFFIX,
        negative_prompt="harsh sun, warm daylight, " + NEGATIVE_PROMPT,
        strength=0.35, gain=(0.86, 0.96, 1.12), saturation=0.95, contrast=1.05, gamma=1.05),
    "polaroid": FilterRecipe(
        prompt="vintage instant film photo, soft faded colors, gentle flash, slight grain, "
               "nostalgic 1990s snapshot, " + QUALITY_SUFFIX,
        negative_prompt="digital sharpness, HDR, " + NEGATIVE_PROMPT,
        strength=0.3, gain=(1.04, 1.0, 0.92), saturation=0.8, contrast=0.9, fade=0.12,
        polaroid_frame=True),
    "cinematic-still": FilterRecipe(
        prompt="cinematic film still, anamorphic lens, teal and orange color grade, dramatic "
               "lighting, subtle film grain, shallow depth of field, " + QUALITY_SUFFIX,
        negative_prompt="flat lighting, snapshot, " + NEGATIVE_PROMPT,
        strength=0.35, gain=(1.04, 0.98, 0.96), saturation=1.05, contrast=1.12, vignette=0.25),
    "noir-bw": FilterRecipe(
        prompt="film noir black and white photograph, high contrast, hard side light, deep "
               "shadows, dramatic mood, " + QUALITY_SUFFIX,
        negative_prompt="color, pastel, low contrast, " + NEGATIVE_PROMPT,
        strength=0.3, contrast=1.3, gamma=1.05, grayscale=True, vignette=0.3),
}
