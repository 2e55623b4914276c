"""nydusify: convert OCI images in a registry into Nydus images, and check them."""
