"""The prediction-label collector: accuracy for any model server, without changing it.

Predictions arrive as KServe payload-logger CloudEvents or plain JSON, labels later by
``POST /labels`` or ``mesh-canary collector import-labels``; sqlite joins them by id and
``/metrics`` exports the model metrics convention per version (docs/collector.md).
"""
