"""`ebbtide plan`: what a load costs across machines, from a bench profile and a load shape.

    profile   what one order costs per function and for nats-server (a bench run's results.json, or built in)
    load      when orders arrive: the ZEISS day, a steady rate, a file of per-second rates
    kube      KEDA (activation, polling or push, cooldown) and the HPA (policies, stabilisation) as state machines
    model     the simulation: pods by KEDA and the HPA, instances by the pools' own policy (scaler.py), CPU, waits
    report    the tables and the chart's series
    options, cli   the command's options (parsed by cli.py), and running it

Pure but for cli.py (files in, text and a chart out).
"""
