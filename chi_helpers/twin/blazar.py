"""(being written)"""


def services(world):
    return []
