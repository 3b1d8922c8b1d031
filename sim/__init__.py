"""The synthetic world and the tools around it (deploy, demo, request and outcome generators).

Dev and demo only: the library (`rig`) and the workers (`streams`) never import it.
"""
