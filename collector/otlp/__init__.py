"""OpenTelemetry both ways: runs out as OTLP spans (``export``), OTLP spans in (``ingest``).

``spans`` maps stored rows to spans with GenAI semantic-convention and OpenInference attributes;
``records`` maps spans back to the pipeline's records, so ingest reuses its validation.
"""
