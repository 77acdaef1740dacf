from lra_bench.protocols import main

main()
