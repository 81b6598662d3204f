"""``python -m carme_kernel``: launch the carme Jupyter kernel."""

from carme_kernel.kernel import main

if __name__ == "__main__":
    main()
