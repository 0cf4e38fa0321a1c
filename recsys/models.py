"""The project holds no model of its own: ApiKey moved to kernel, QualitySnapshot to quality, ErasureRecord to
privacy, ErasedCustomer to catalog (their tables kept; recsys/migrations/0005 hands them over)."""
