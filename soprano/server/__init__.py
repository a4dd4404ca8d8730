"""The streaming server: Tornado app, WebSocket protocol, synthesis scheduler."""
