"""Tool flows over the hardware units: Verilog + manifest export, FPGA synthesis."""
