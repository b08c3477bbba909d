from patchstudio.web.methods.base import WebMethod


def claim(spec) -> str:
    how = "gradient × input" if spec.steps == 1 else f"integrated gradients from the corrupted prompt, {spec.steps} steps"
    return f"input influence of each clean token ({how})"


WEB = WebMethod(
    name="input_influence",
    label="input influence (per token)",
    fields=("steps",),
    claim=claim,
)
