import sys
def main(argv, config_path):
    sys.stdout.write(repr(argv) + "\n")
    return 3
