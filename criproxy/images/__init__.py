"""Images: pulls, the image index, unpacking, and the image filesystem."""
