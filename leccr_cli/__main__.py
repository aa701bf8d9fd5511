from leccr_cli.cli import main

main()
