"""iRPE maths: index functions, 2D mappings, lookup tables. Imports only torch (and pydantic for the config)."""
from .config import RPEConfig
from .encoding import (
    BucketTerm,
    LogitsTerm,
    RelativePositionEncoding,
    attention_logits_terms,
    bias_logits,
    bucket_index,
    contextual_logits,
    contextual_products,
    contextual_values,
    gather_buckets,
    scatter_buckets,
)
from .index import INDEX_FUNCTIONS, get_index, register_index
from .mapping import (
    MAPPINGS,
    Mapping,
    bucket_ids,
    get_mapping,
    grid_offsets,
    num_buckets,
    offset_ids,
    offset_slots,
    register_mapping,
)

__all__ = [
    "RPEConfig", "BucketTerm", "LogitsTerm", "RelativePositionEncoding", "attention_logits_terms", "bias_logits",
    "bucket_index", "contextual_logits", "contextual_products", "contextual_values", "gather_buckets",
    "scatter_buckets", "INDEX_FUNCTIONS", "get_index", "register_index", "MAPPINGS", "Mapping",
    "bucket_ids", "get_mapping", "grid_offsets", "num_buckets", "offset_ids", "offset_slots", "register_mapping",
]
