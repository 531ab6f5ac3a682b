"""pushsync: silent FCM and APNs pushes that tell a user's devices a dataset changed."""

__version__ = "0.1.0"
