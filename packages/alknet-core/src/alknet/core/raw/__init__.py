"""alknet.core.raw"""
