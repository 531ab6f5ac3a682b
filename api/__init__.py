"""The HTTP API (CONTRACT section 7): Cognito Sync's push sync paths and error shapes, so that apps
and back ends in any language can register devices, manage subscriptions and publish events.

``api.app.create_app()`` is the ASGI app; ``pushsync api`` serves it with uvicorn. Handlers are
thin: they check the credential and the input, then call the store's repository functions and
the producer client, the same code the command line calls.
"""
