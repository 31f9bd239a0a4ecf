"""The Wixma API v1 surface (`/api/v1`): routes, protocol models and auth dependencies."""
