from patchstudio.web.methods.base import WebMethod


def claim(spec) -> str:
    base = "the corrupted prompt" if spec.baseline == "corrupted" else "zero"
    if spec.steps == 1:
        how = "gradient × input" if spec.baseline == "zero" else "gradient × (input − corrupted input)"
    else:
        how = f"integrated gradients from {base}, {spec.steps} steps"
    return f"input influence of each clean token ({how})"


WEB = WebMethod(
    name="input_influence",
    label="input influence (per token)",
    fields=("steps", "baseline"),
    claim=claim,
)
