from patchstudio.web.methods.base import WebMethod

WEB = WebMethod(
    name="logit_lens",
    label="logit lens (layer × position)",
    fields=("run",),
    claim=lambda spec: f"logit lens of the {spec.run} run: each layer's residual stream read through the final norm and unembedding",
)
