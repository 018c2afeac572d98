"""Task 1: sentence embeddings and cosine similarity under each pooling mode (docs/design.md).

python -m docs.similarity   (from the repository root)
"""

from transformers import AutoTokenizer

from modeling_multitask import MultiTaskModel
from trainer_multitask import bundled_encoder_path

encoder = bundled_encoder_path()
tokenizer = AutoTokenizer.from_pretrained(encoder)
sentences = [
    "The central bank raised interest rates again.",
    "Rates went up once more at the Fed.",
    "I slept badly and skipped my morning run.",
    "The striker scored twice in the final.",
]
for pooling in ("mean", "cls", "max"):
    model = MultiTaskModel.from_backbone(encoder, pooling=pooling)
    emb = model.encode(sentences, tokenizer, normalize=True)  # (4, 384), unit length
    sim = emb @ emb.T  # cosine similarity
    print(pooling, [[round(v, 2) for v in row] for row in sim.tolist()])
