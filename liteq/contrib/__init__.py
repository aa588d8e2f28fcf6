"""What ties liteq into other frameworks; each an extra (`liteq.contrib.django`: Django)."""
