"""Local stand-ins for FCM and APNs that speak the real protocols. Imports nothing of ours."""
