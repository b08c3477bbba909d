from patchstudio.web.methods.base import WebMethod

WEB = WebMethod(
    name="ablation",
    label="ablation",
    fields=("component", "positions", "positions_at", "ablation", "seed", "draws", "reference", "reference_prompts"),
    claim=lambda spec: f"{spec.ablation} ablation of the clean run",
)
