"""The API's routers: predict, ops (health/ready/model/metrics), admin, ui."""
