from newsletter.cli import run

if __name__ == "__main__":  # a process started with spawn imports this without running it
    run()
