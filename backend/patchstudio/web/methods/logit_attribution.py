from patchstudio.web.methods.base import WebMethod


def claim(spec) -> str:
    return (f"direct logit attribution of the {spec.run} run: every head, MLP and embedding read through the final "
            f"norm (its scale frozen at the {spec.run} run's) and the unembedding")


WEB = WebMethod(
    name="logit_attribution",
    label="direct logit attribution (every component)",
    fields=("run",),
    claim=claim,
)
