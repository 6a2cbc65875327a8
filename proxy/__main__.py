from proxy.cli import main

# Guarded: --workers starts each worker by importing this module again (multiprocessing spawn).
if __name__ == "__main__":
    main()
