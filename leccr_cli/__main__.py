from leccr_cli.cli.main import main

main()
