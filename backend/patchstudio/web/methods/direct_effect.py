from patchstudio.web.methods.base import WebMethod, direction_phrase


def claim(spec) -> str:
    return f"direct effect of each head on the logits, nothing recomputed ({direction_phrase(spec)})"


WEB = WebMethod(
    name="direct_effect",
    label="direct effect (heads → logits)",
    fields=("direction",),
    claim=claim,
)
