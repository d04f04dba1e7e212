from ledgerbus.cli import main

main()
