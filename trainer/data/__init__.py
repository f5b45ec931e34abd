"""The data pipeline: records from files or the Hub, formats, chat templates with exact loss masks, batching and packing."""
